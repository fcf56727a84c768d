"""The playground's CSS (the front end's light or dark theme) and keys (Ctrl+Enter, Escape)."""

from __future__ import annotations

import ipywidgets as W

# JupyterLab's and Voila's --jp-* variables, then Colab's --colab-*, then a light fallback.
CSS = """
.opt-playground {
  --opt-bg: var(--jp-layout-color0, var(--colab-primary-surface-color, #fff));
  --opt-fg: var(--jp-ui-font-color0, var(--colab-primary-text-color, #1a1a1a));
  --opt-border: var(--jp-border-color1, var(--colab-border-color, #c8c8c8));
  --opt-mark: var(--jp-warn-color3, #fff2b3);
  color: var(--opt-fg); box-sizing: border-box; max-width: 100%;
}
.opt-playground * { box-sizing: border-box; }
.opt-main, .opt-side { min-width: 0; }
.opt-output { border: 1px solid var(--opt-border); background: var(--opt-bg); color: var(--opt-fg);
  padding: 6px; min-height: 140px; max-height: 60vh; overflow: auto; }
.opt-text { white-space: pre-wrap; overflow-wrap: break-word; font-family: var(--jp-code-font-family, monospace);
  font-size: var(--jp-code-font-size, 13px); line-height: 1.45; }
.opt-prompt textarea { font-family: var(--jp-code-font-family, monospace); }
.opt-table { width: 100%; border-collapse: collapse; }
.opt-table th, .opt-table td { padding: 2px 6px; text-align: left; vertical-align: top; word-break: normal;
  overflow-wrap: normal; hyphens: manual; border-bottom: 1px solid var(--opt-border); }
.opt-table td.opt-nowrap, .opt-table th { white-space: nowrap; }
.opt-history, .opt-branches { overflow-x: auto; max-width: 100%; }
.opt-branch { margin: 4px 0 12px; }
.opt-branch mark { background: var(--opt-mark); color: inherit; }
.opt-token, .opt-alternative, .opt-swatch { color: #1a1a1a !important; font-family: var(--jp-code-font-family, monospace); }
.opt-swatch { padding: 0 5px; margin: 0 2px; border-radius: 3px; display: inline-block; }
.opt-alternatives { border-left: 3px solid var(--opt-border); padding: 2px 6px; margin: 2px 0 6px; }
.opt-link-button { display: inline-block; padding: 3px 10px; margin: 2px 4px 2px 0; border: 1px solid var(--opt-border);
  border-radius: 2px; text-decoration: none !important; color: var(--opt-fg) !important; background: var(--opt-bg);
  white-space: nowrap; }
.opt-copy { cursor: pointer; }
.opt-tabs .lm-TabBar-content, .opt-tabs .p-TabBar-content { flex-wrap: wrap; }
.opt-tabs .lm-TabBar, .opt-tabs .p-TabBar { height: auto !important; min-height: 0; }
.opt-tabs .lm-TabBar-tab, .opt-tabs .p-TabBar-tab { flex: 0 0 auto !important; min-width: 0 !important;
  max-width: none !important; }
.opt-compare-choice, .opt-compare-choice label, .opt-compare-choice .widget-label-basic { white-space: normal;
  overflow-wrap: anywhere; max-width: 100%; height: auto; }
.opt-column { border: 1px solid var(--opt-border); }
.opt-model select, .opt-restore-picker select { max-width: 100%; text-overflow: ellipsis; }
.opt-model-status .widget-html-content, .opt-status .widget-html-content, .opt-message .widget-html-content,
.opt-prompt-count .widget-html-content { line-height: 1.4; padding: 2px 0; }
.opt-model select { min-width: 0; }
"""

# Ctrl+Enter (Cmd+Enter) in the app presses Generate; Escape presses Stop while it is enabled. Installed once
# a page, by an image that fails to load: the one way a widget's HTML runs code in every front end.
KEYS = ("if(!window.optPlaygroundKeys){window.optPlaygroundKeys=1;document.addEventListener('keydown',function(e){"
        "var app=e.target&&e.target.closest&&e.target.closest('.opt-playground');if(!app)return;"
        "var b=null;if((e.ctrlKey||e.metaKey)&&e.key==='Enter')b=app.querySelector('button.opt-generate');"
        "else if(e.key==='Escape')b=app.querySelector('button.opt-stop');"
        "if(b&&!b.disabled){e.preventDefault();e.stopPropagation();b.click();}},true);}")


def style_widget() -> W.HTML:
    """The CSS and the keys, as an HTML widget that shows nothing itself."""
    keys = KEYS.replace('"', "&quot;")
    widget = W.HTML(f'<style>{CSS}</style><img alt="" src="data:," style="display:none" onerror="{keys}">',
                    layout=W.Layout(height="0px", margin="0"))
    widget.add_class("opt-style")
    return widget


def copy_button() -> W.HTML:
    """A Copy button that puts the output's text on the clipboard (in the browser: the kernel has no clipboard)."""
    script = ("var t=this.closest('.opt-playground').querySelector('.opt-output .opt-text');"
              "var s=t?t.innerText:'';var b=this;navigator.clipboard.writeText(s).then(function(){"
              "b.textContent='Copied';setTimeout(function(){b.textContent='Copy'},1500)})")
    widget = W.HTML(f'<button class="jupyter-button widget-button opt-copy" title="Copy the prompt and the generated '
                    f'text to the clipboard" onclick="{script}">Copy</button>')
    widget.add_class("opt-copy-box")
    return widget
