"""The app layer: Gradio tabs and the services they share. Only this layer (and app.py)
wires labeling, training and evals together (see DESIGN.md, dependency direction)."""
