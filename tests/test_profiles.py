"""Profiles: validation with field-specific messages, auto backend, ports, CRUD, rights."""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from manager.accounts.auth import User
from manager.errors import Conflict, PermissionDenied, ValidationError
from manager.models.hf_cache import cached_repo_ids, resolve_model
from manager.net import free_port
from manager.servers.distributed.spec import DistributedSpec, parse_hosts
from manager.servers.profiles import (
    Backend,
    ProfileSpec,
    copy_name,
    is_loopback,
    suggest_port,
)
from manager.services import Services
from manager.store import Store
from tests.conftest import PASSWORD


def spec(model: Path | str, **fields: object) -> ProfileSpec:
    fields.setdefault("name", "tiny")
    fields.setdefault("port", free_port())
    return ProfileSpec(model=str(model), **fields)  # type: ignore[arg-type]


def plain_model(tmp_path: Path, source: Path) -> Path:
    """A copy of the tiny text model whose chat template has no thinking markup."""
    dest = tmp_path / "plain"
    shutil.copytree(source, dest)
    config = json.loads((dest / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


def field_error(services: Services, value: ProfileSpec,
                actor: User | None = None) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        services.profiles.create(actor, value)
    return caught.value


def test_backend_is_chosen_from_capabilities(services: Services,
                                             tiny_models: dict[str, Path]) -> None:
    text = services.profiles.create(None, spec(tiny_models["text"], name="text"))
    vision = services.profiles.create(None, spec(tiny_models["vision"], name="vision"))
    forced = services.profiles.create(
        None, spec(tiny_models["vision"], name="forced", backend=Backend.MLX_LM))
    assert (text.backend, vision.backend, forced.backend) == (
        Backend.MLX_LM, Backend.MLX_VLM, Backend.MLX_LM)


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"name": "  "}, "name", "Give the profile a name"),
    ({"port": 80}, "port", "between 1024 and 65535"),
    ({"port": 70000}, "port", "between 1024 and 65535"),
    ({"model": "/no/such/folder"}, "model", "No model folder"),
    ({"model": "acme/not-downloaded"}, "model", "not downloaded"),
    ({"context_length": 100_000}, "context_length", "above this model's maximum of 4,096"),
    ({"context_length": 0}, "context_length", "positive"),
    ({"temperature": 3.0}, "temperature", "between 0 and 2"),
    ({"top_p": 1.5}, "top_p", "between 0 and 1"),
    ({"max_tokens": 0}, "max_tokens", "Max tokens"),
    ({"host": "my laptop"}, "host", "not an IP address"),
    ({"idle_timeout_minutes": -5}, "idle_timeout_minutes", "Idle timeout"),
])
def test_invalid_values_name_their_field(services: Services, tiny_models: dict[str, Path],
                                         hf_home: Path, changes: dict, field: str,
                                         message: str) -> None:
    error = field_error(services, replace(spec(tiny_models["text"]), **changes))
    assert error.field == field
    assert message in error.message


def test_duplicate_names_and_ports_are_refused(services: Services,
                                               tiny_models: dict[str, Path]) -> None:
    first = services.profiles.create(None, spec(tiny_models["text"], name="Qwen tiny"))
    error = field_error(services, spec(tiny_models["text"], name="qwen  TINY"))
    assert (error.field, error.message) == ("name", "A profile named 'qwen TINY' already exists.")
    error = field_error(services, spec(tiny_models["text"], name="other", port=first.port))
    assert error.field == "port" and "used by profile 'Qwen tiny'" in error.message


def test_a_port_in_use_by_another_program_is_refused(services: Services,
                                                     tiny_models: dict[str, Path]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        error = field_error(services, spec(tiny_models["text"], port=port))
    assert error.field == "port" and f"Port {port} is in use by another program" in error.message


def test_the_next_free_port_is_suggested(services: Services, tiny_models: dict[str, Path]
                                         ) -> None:
    busy = {8080, 8082}
    assert suggest_port(is_free=lambda _h, p: p not in busy) == 8081
    first = services.profiles.create(None, spec(tiny_models["text"], name="a", port=None))
    second = services.profiles.create(None, spec(tiny_models["text"], name="b", port=None))
    assert 8080 <= first.port < second.port < 9000
    assert services.profiles.suggest_port() not in (first.port, second.port)


def test_a_downloaded_repo_id_resolves_to_its_snapshot(hf_home: Path,
                                                       tiny_models: dict[str, Path],
                                                       services: Services) -> None:
    repo = hf_home / "hub" / "models--mlx-community--tiny-qwen3"
    snapshot = repo / "snapshots" / "abc123"
    shutil.copytree(tiny_models["text"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert resolve_model("mlx-community/tiny-qwen3", hf_home / "hub") == snapshot
    assert cached_repo_ids(hf_home / "hub") == ["mlx-community/tiny-qwen3"]
    assert services.profiles.cached_repo_ids() == ["mlx-community/tiny-qwen3"]
    profile = services.profiles.create(None, spec("mlx-community/tiny-qwen3"))
    assert profile.model == "mlx-community/tiny-qwen3" and profile.backend is Backend.MLX_LM


def test_a_folder_given_relative_or_from_home_is_kept_absolute(
        services: Services, tiny_models: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`profiles add x --model model` run in one folder was stored as "model": the
    dashboard, started elsewhere, then found "No model folder at model"."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny").symlink_to(tiny_models["text"])  # a link stays a link
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "models")
    relative = services.profiles.create(None, ProfileSpec(name="relative", model="tiny"))
    tilde = services.profiles.create(None, ProfileSpec(name="tilde", model="~/models/tiny/"))
    assert relative.model == tilde.model == str(home / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert services.profiles.resolve_model(relative.model) == tiny_models["text"].resolve()


def test_thinking_is_kept_for_models_that_have_it(services: Services, tmp_path: Path,
                                                  tiny_models: dict[str, Path]) -> None:
    on = services.profiles.create(None, spec(tiny_models["thinking"], name="t", thinking=True))
    assert on.thinking is True
    plain = plain_model(tmp_path, tiny_models["text"])
    error = field_error(services, spec(plain, name="p", thinking=True))
    assert error.field == "thinking" and "no thinking mode" in error.message
    off = services.profiles.create(None, spec(plain, name="x", thinking=False))
    assert off.thinking is None  # "off" means nothing for a model without thinking


def test_crud_and_duplicate(services: Services, tiny_models: dict[str, Path]) -> None:
    profiles = services.profiles
    made = profiles.create(None, spec(tiny_models["text"], name="Base", description="line 1\n"
                                      "line 2", system_prompt="Be brief.", auto_start=True))
    assert made.description == "line 1\nline 2" and made.system_prompt == "Be brief."
    changed = profiles.update(None, made.id, replace(made.spec(), max_tokens=32, top_p=0.5))
    assert (changed.max_tokens, changed.top_p, changed.port) == (32, 0.5, made.port)
    copy = profiles.duplicate(None, made.id)
    assert copy.name == "Base (copy)" and copy.port != made.port and not copy.auto_start
    assert copy.system_prompt == "Be brief." and copy.max_tokens == 32
    assert profiles.duplicate(None, copy.id).name == "Base (copy 2)"
    assert copy_name("X", ["x (copy)"]) == "X (copy 2)"
    # A name at the length limit: the copies' names were cut back to the taken one.
    long = profiles.create(None, replace(made.spec(), name="L" * 64, port=None))
    copies = [profiles.duplicate(None, long.id).name for _ in range(3)]
    assert copies == ["L" * 57 + " (copy)", "L" * 55 + " (copy 2)", "L" * 55 + " (copy 3)"]
    for each in (long.name, *copies):
        profiles.delete(None, profiles.find(each).id)
    profiles.delete(None, copy.id)
    assert [p.name for p in profiles.list()] == ["Base", "Base (copy 2)"]
    assert profiles.find("base").id == made.id and profiles.find(str(made.id)).id == made.id


def test_a_profile_with_a_running_server_cannot_be_deleted(services: Services,
                                                           tiny_models: dict[str, Path]) -> None:
    made = services.profiles.create(None, spec(tiny_models["text"]))
    with services.store.connect() as db:
        db.execute("INSERT INTO servers (profile_id, state, updated_at) VALUES (?, 'ready', 'x')",
                   [made.id])
    with pytest.raises(Conflict, match="stop it before deleting"):
        services.profiles.delete(None, made.id)


def test_only_admins_and_the_creator_edit_a_profile(services: Services,
                                                    tiny_models: dict[str, Path]) -> None:
    auth = services.auth
    admin = auth.register("admin@example.com", PASSWORD)
    alice = auth.add_user("alice@example.com", PASSWORD)
    bob = auth.add_user("bob@example.com", PASSWORD)
    mine = services.profiles.create(alice, spec(tiny_models["text"], name="alice's"))
    assert mine.owner_id == alice.id
    with pytest.raises(PermissionDenied, match="Duplicate it"):
        services.profiles.update(bob, mine.id, replace(mine.spec(), max_tokens=9))
    with pytest.raises(PermissionDenied):
        services.profiles.delete(bob, mine.id)
    bobs = services.profiles.duplicate(bob, mine.id)
    assert bobs.owner_id == bob.id
    services.profiles.update(bob, bobs.id, replace(bobs.spec(), max_tokens=9))
    services.profiles.update(alice, mine.id, replace(mine.spec(), max_tokens=8))
    services.profiles.update(admin, mine.id, replace(mine.spec(), max_tokens=7))
    services.profiles.delete(admin, mine.id)


def test_profiles_survive_as_json_friendly_rows(services: Services,
                                                tiny_models: dict[str, Path]) -> None:
    made = services.profiles.create(None, spec(tiny_models["thinking"], thinking=False,
                                               temperature=0.7, idle_timeout_minutes=15))
    with services.store.connect() as db:
        row = next(iter(db.query("SELECT * FROM profiles WHERE id = ?", [made.id])))
    assert json.loads(json.dumps(row))["thinking"] == 0
    again = services.profiles.get(made.id)
    assert (again.thinking, again.temperature, again.idle_timeout_minutes) == (False, 0.7, 15)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("10.0.0.1", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_only_admins_bind_a_profile_beyond_loopback(services: Services,
                                                    tiny_models: dict[str, Path]) -> None:
    auth = services.auth
    admin = auth.register("admin@example.com", PASSWORD)
    alice = auth.add_user("alice@example.com", PASSWORD)
    vision = tiny_models["vision"]
    with pytest.raises(PermissionDenied, match="Only an administrator may make a server"):
        services.profiles.create(alice, spec(vision, name="lan", host="0.0.0.0"))
    assert services.profiles.list() == []
    # Loopback in any spelling is anyone's.
    local = services.profiles.create(alice, spec(vision, name="local", host="127.0.0.2"))
    services.profiles.create(alice, spec(vision, name="named", host="localhost"))
    assert local.server_key is None and local.server_env() == {} and local.auth_headers() == {}
    with pytest.raises(PermissionDenied, match="Only an administrator may make a server"):
        services.profiles.update(alice, local.id, replace(local.spec(), host="0.0.0.0"))
    assert services.profiles.get(local.id).host == "127.0.0.2"

    lan = services.profiles.create(admin, spec(vision, name="lan", host="0.0.0.0"))
    assert lan.backend is Backend.MLX_VLM and lan.server_key
    assert lan.server_key not in repr(lan)
    assert lan.server_env() == {"MLX_VLM_SERVER_API_KEY": lan.server_key}
    assert lan.auth_headers() == {"Authorization": f"Bearer {lan.server_key}"}
    # An admin may open alice's profile to the LAN; it then gets a key of its own.
    opened = services.profiles.update(admin, local.id, replace(local.spec(), host="0.0.0.0"))
    assert opened.server_key and opened.server_key != lan.server_key
    # Alice may still take it back to loopback; the key stays (a server may expect it).
    back = services.profiles.update(alice, local.id, replace(opened.spec(), host="127.0.0.1"))
    assert back.server_key == opened.server_key
    # A copy made by alice stays on this machine; an admin's copy gets a new key.
    alices_copy = services.profiles.duplicate(alice, lan.id)
    assert alices_copy.host == "127.0.0.1" and alices_copy.server_key is None
    admins_copy = services.profiles.duplicate(admin, lan.id)
    assert admins_copy.host == "0.0.0.0" and admins_copy.server_key not in (None,
                                                                             lan.server_key)


def test_a_backend_without_an_api_key_is_never_bound_beyond_loopback(
        services: Services, tiny_models: dict[str, Path]) -> None:
    admin = services.auth.register("admin@example.com", PASSWORD)
    for actor in (admin, None):
        error = field_error(services, spec(tiny_models["text"], host="0.0.0.0"), actor)
        assert error.field == "host"
        assert "mlx_lm's server has no API key option" in error.message
        assert "would let anyone on the network use it" in error.message
    assert services.profiles.list() == []


def test_only_admins_save_ranks_on_other_machines_or_network_addresses(
        services: Services, tiny_models: dict[str, Path]) -> None:
    auth = services.auth
    admin = auth.register("admin@example.com", PASSWORD)
    alice = auth.add_user("alice@example.com", PASSWORD)
    model = tiny_models["text"]

    def ranks(text: str) -> DistributedSpec:
        return DistributedSpec.checked(parse_hosts(text), base_port=free_port())

    # Another machine through the dashboard's ssh keys, with an interpreter of alice's
    # choosing; or a rank listening on a LAN address.
    for hosts in ("local 127.0.0.1\nmac2 192.168.1.11 python=/tmp/anything",
                  "local 192.168.1.10\nlocal 127.0.0.1"):
        with pytest.raises(PermissionDenied, match="Only an administrator may save a profile "
                                                   "with ranks on other machines"):
            services.profiles.create(alice, spec(model, name="pool", distributed=ranks(hosts)))
    assert services.profiles.list() == []
    # Two ranks on this machine's loopback are anyone's; turning them remote is not.
    mine = services.profiles.create(alice, spec(model, name="pool", distributed=ranks(
        "local 127.0.0.1\nlocal 127.0.0.1")))
    with pytest.raises(PermissionDenied):
        services.profiles.update(alice, mine.id, replace(mine.spec(), distributed=ranks(
            "local 127.0.0.1\nmac2 192.168.1.11")))
    assert services.profiles.get(mine.id).distributed == mine.distributed
    pooled = services.profiles.update(admin, mine.id, replace(mine.spec(), distributed=ranks(
        "local 127.0.0.1\nmac2 192.168.1.11")))
    assert pooled.distributed is not None and not pooled.distributed.hosts[1].is_local


def test_the_profile_list_sees_changes_made_here_and_elsewhere_at_once(
        services: Services, tiny_models: dict[str, Path]) -> None:
    """list() (the gateway's name lookup on every request) is kept between calls until
    the database changes, whoever changed it."""
    first = services.profiles.create(None, spec(tiny_models["text"], name="one"))
    assert [p.name for p in services.profiles.list()] == ["one"]
    services.profiles.create(None, spec(tiny_models["text"], name="two"))
    assert [p.name for p in services.profiles.list()] == ["one", "two"]
    with Store(services.store.path).connect() as db:  # as the CLI would, on its own
        db.execute("UPDATE profiles SET name = 'zero' WHERE id = ?", [first.id])
    assert [p.name for p in services.profiles.list()] == ["two", "zero"]
