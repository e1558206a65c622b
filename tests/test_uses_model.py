"""Which model a running server uses (manager/servers/snapshot.uses_model): the library
refuses to delete it. The same folder or repo named another way is still that model."""

from __future__ import annotations

from pathlib import Path

from manager.servers.profiles import Backend, Profile
from manager.servers.snapshot import ServerSnapshot, uses_model
from manager.servers.states import ServerState


def _running(model: str, model_path: str) -> ServerSnapshot:
    profile = Profile(id=1, name="tiny", model=model, backend=Backend.MLX_LM,
                      host="127.0.0.1", port=9001)
    return ServerSnapshot(profile=profile, state=ServerState.READY, state_since=0.0,
                          model_path=model_path)


def test_a_model_reached_through_a_symlinked_folder_is_in_use(tmp_path: Path) -> None:
    """Bug: the server's profile named the model through a symlinked folder (on macOS /tmp
    and /var are symlinks to /private/...), the library lists it by its real path, and
    the two strings differ: the library let the model be deleted under its server."""
    real = tmp_path / "real" / "acme" / "tiny"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    through_link = str(tmp_path / "link" / "acme" / "tiny")
    snaps = [_running(through_link, through_link)]
    assert uses_model(snaps, str(real))
    assert uses_model(snaps, str(tmp_path / "real" / "acme"))  # the folder above it
    other = tmp_path / "real" / "acme" / "other"
    other.mkdir()
    assert not uses_model(snaps, str(other))


def test_a_repo_named_in_another_case_is_in_use() -> None:
    """Hugging Face repo ids are not case-sensitive (the hub and the cache lookup find
    either): a profile that names the repo in lower case uses the library's repo."""
    snaps = [_running("mlx-community/qwen3-0.6b-4bit", "")]
    assert uses_model(snaps, "mlx-community/Qwen3-0.6B-4bit")
    assert not uses_model(snaps, "mlx-community/Qwen3-1.7B-4bit")


def test_a_folder_in_another_case_is_another_folder_where_the_disk_says_so(
        tmp_path: Path) -> None:
    """Only repo ids are compared without case: on a case-sensitive disk /models/Foo
    and /models/foo are two models, and the one not running may be deleted."""
    running = tmp_path / "Foo"
    running.mkdir()
    (tmp_path / "foo").mkdir()
    snaps = [_running(str(running), str(running))]
    assert uses_model(snaps, str(running))
    assert not uses_model(snaps, str(tmp_path / "foo"))
