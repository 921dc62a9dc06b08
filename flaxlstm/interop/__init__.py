"""Models and weights from other libraries: ``keras.from_keras`` (a saved Keras 3 model, whole)
and ``torch.load_torch_weights`` (PyTorch's ``nn.LSTM`` weights)."""
