"""Training: what each ``flaxlstm train`` task assembles (``tasks``)."""
