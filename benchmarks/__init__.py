"""The train-step benchmark of flaxlstm against other LSTMs; not part of the installed package."""
