"""The library and the servers together: a model in use cannot be deleted; starts are recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from manager.errors import Conflict
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.services import Services

pytestmark = pytest.mark.slow
PW = "correct horse battery"


def test_a_running_model_cannot_be_deleted_and_its_use_is_recorded(
    services: Services, tiny_models: dict[str, Path], tmp_path: Path, hf_home: Path
) -> None:
    admin = services.auth.register("alice@example.com", PW)
    folder = tmp_path / "lmstudio" / "acme" / "tiny"
    shutil.copytree(tiny_models["text"], folder)
    services.library.add_folder(admin, str(tmp_path / "lmstudio"))
    model = next(m for m in services.library.scan() if m.path == folder.resolve()
                 or str(m.path) == str(folder))
    assert model.last_used is None
    profile = services.profiles.create(admin, ProfileSpec(name="tiny", model=str(folder),
                                                          port=free_port()))
    services.supervisor.start(profile.id, by=admin.email)
    services.supervisor.wait_ready(profile.id, 90)
    assert services.supervisor.uses_model(str(model.path))
    with pytest.raises(Conflict, match="used by a running server"):
        services.library.delete(admin, str(model.path))
    assert folder.exists()
    services.library.invalidate()
    used = next(m for m in services.library.scan() if str(m.path) == str(model.path))
    assert used.last_used is not None
    services.supervisor.stop(profile.id)
    assert not services.supervisor.uses_model(str(model.path))
    services.library.delete(admin, str(model.path))
    assert not folder.exists()
