"""The internals lab: what a trained LSTM does inside.

traces.py     every layer's gates and states over time, predictions step by step
internals.py  over whole data sets: gate saturation, the units that follow a signal,
              what clamping units changes (ablations)
plots.py      pictures of them (matplotlib, imported only here)
explorer.py   one self-contained page to explore a model reading a text; the page's
              markup, style and script are the package data explorer.html, .css, .js
"""
