"""The internals lab: what a trained LSTM does inside.

traces.py     every layer's gates and states over time, predictions step by step
internals.py  over whole data sets: gate saturation, the units that follow a signal,
              what clamping units changes (ablations)
plots.py      pictures of them (matplotlib, imported only here)
hypotheses.py LSTMVis's hypotheses: the cells on over a span (select_cells), where else
              they are all on (match_spans)
attribution.py  which tokens an output rests on (saliency: grad × input, integrated
              gradients) and how far back its gradient reaches (gradient_flow)
explorer.py   the lab page: one self-contained page to explore a model reading texts; the
              page's markup, style and script are the package data explorer.html, .css, .js
corpus.py     the page's corpus of up to 50 texts: 8-bit h and c for selecting and matching
              in the browser, signal, annotation and attribution rows, ablations
"""
