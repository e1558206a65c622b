"""components.gradio_startup: Gradio loads as usual, without rewriting its stubs."""

from __future__ import annotations

import sys

import gradio as gr

from components import gradio_startup


def test_this_process_imported_gradio_without_its_stub_writer() -> None:
    # tests/conftest.py installs the hook before any test module imports Gradio, as
    # app.create_app does before its own import.
    import gradio.component_meta as meta

    assert meta.create_or_modify_pyi is gradio_startup._write_no_stub
    # The components were made by the same metaclass, events and all.
    box = gr.Textbox(value="hi")
    assert box.value == "hi" and callable(gr.Textbox.change)


def test_the_hook_is_installed_once_and_leaves_other_modules_alone() -> None:
    gradio_startup.skip_stub_regeneration()
    gradio_startup.skip_stub_regeneration()
    hooks = [f for f in sys.meta_path if isinstance(f, gradio_startup._StubWriterSkipper)]
    assert len(hooks) == 1
    assert hooks[0].find_spec("gradio.components", gr.__path__) is None
    spec = hooks[0].find_spec(gradio_startup.META_MODULE, gr.__path__)
    assert spec is not None and isinstance(spec.loader, gradio_startup._MetaLoader)
