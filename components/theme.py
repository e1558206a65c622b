"""The dashboard's theme: Gradio's default with text that meets WCAG AA contrast (4.5:1)
wherever the default falls short, found by the axe-core scan in tests/test_look_browser.py.
The sign-in pages wear the same theme (manager/api/login.py reads its CSS variables)."""

from __future__ import annotations

import gradio as gr


def dashboard_theme() -> gr.themes.Base:
    return gr.themes.Default().set(
        # Primary buttons: white on orange-500 is 2.8:1; on orange-700 5.2:1.
        button_primary_background_fill="*primary_700",
        button_primary_background_fill_hover="*primary_800",
        button_primary_background_fill_dark="*primary_700",
        button_primary_background_fill_hover_dark="*primary_800",
        # Delete, revoke, stop: white on red-500 is 3.8:1; on red-700 6.5:1.
        button_cancel_background_fill="#b91c1c",
        button_cancel_background_fill_hover="#991b1b",
        # The hint under a field: grey-400 on white is 2.5:1; grey-600 7.8:1.
        block_info_text_color="*neutral_600",
        block_info_text_color_dark="*neutral_400",
    )


# Highlighted code (the API keys tab's snippets) in light mode: Gradio's token colours
# are 2.1-4.5:1 on the code background; these keep each hue at 4.9:1 or more. Dark
# mode's own colours pass.
_LIGHT_TOKENS = {
    "keyword,atrule,attr-value": "#006699",
    "comment,prolog,doctype,cdata": "#5f6b78",
    "function,class-name": "#b3284a",
    "punctuation": "#6b6b6b",
    "regex,important,variable": "#9c5700",
    "selector,attr-name,string,char,builtin,inserted": "#4a7000",
}
THEME_CSS = "".join(
    ",".join(f"body:not(.dark) .md .token.{kind}" for kind in kinds.split(","))
    + f"{{color:{colour}}}\n"
    for kinds, colour in _LIGHT_TOKENS.items())
