"""The page's few CSS rules on top of gradio's theme (gradio 6 takes them at launch).

- The side-by-side answer panes (Arena and Chat) are gr.Chatbot blocks whose label badge ("Model A")
  and corner buttons sit absolutely over the scrolling messages, so a long answer scrolled down
  ran under the badge and its first words were hidden. The messages now scroll in the space below.
- gr.Chatbot always shows a Clear (trash) button on a pane with messages. It clears only that
  pane in the browser: one side of a blind comparison could vanish before the vote, and in Chat the
  pane no longer showed the conversation the server keeps. The tabs have their own controls.
- gradio's semibold (600) Source Sans Pro file is a 5 KB subset (a space, "A", "B" and some Cyrillic),
  so nearly every semibold letter (buttons, headings, bold labels) was drawn in a fallback font, and
  "A is better" mixed two fonts. Semibold text takes the complete Bold file gradio ships beside it
  instead (the same relative URL as gradio's own rule, so it resolves under a Space's path prefix too).
"""

from __future__ import annotations

ANSWER_PANES = ("#arena-a", "#arena-b", "#chat-left", "#chat-right")
BADGE_PX = 28  # the label badge's height, with a little air

PAGE_CSS = "\n".join([
    '@font-face { font-family: "Source Sans Pro"; font-weight: 600; font-style: normal;'
    ' src: url("static/fonts/SourceSansPro/SourceSansPro-Bold.woff2") format("woff2"); }',
    ", ".join(f"{pane} .bubble-wrap" for pane in ANSWER_PANES)
    + f" {{ margin-top: {BADGE_PX}px; height: calc(100% - {BADGE_PX}px); }}",
    ", ".join(f'{pane} button[aria-label="Clear"]' for pane in ANSWER_PANES) + " { display: none; }",
])
