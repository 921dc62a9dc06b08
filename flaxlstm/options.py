"""A command's options as dataclass fields: a default, a help text, the choices, and a parser
of the option's text (``checked``: a one-line ``OptionError`` saying what it takes). The
configs of ``flaxlstm.config`` are built of them; ``flaxlstm.cli.add_options`` turns each
field into a ``--flag``."""

from __future__ import annotations

from dataclasses import field

from flaxlstm.recurrent import LOOPS


class OptionError(ValueError):
    """An option's text is not a value it takes; the message says what was expected."""


def checked(parse, ok, expected: str):
    """A parser of an option's text: ``parse`` it, and accept the value if ``ok(value)``;
    an OptionError saying what was ``expected`` otherwise."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise OptionError(f"expected {expected}, got {text!r}")
        return value

    return convert


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = checked(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = checked(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
fraction = checked(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def option(default, help: str, parse=None, choices=None):
    """A dataclass field that is also a command-line option (``--name-with-dashes``)."""
    return field(default=default, metadata=dict(help=help, parse=parse, choices=choices))


# Options that tasks share with other defaults.
def learning_rate_option(default: float):
    return option(default, "of Adam", positive_float)


def schedule_option(default: str):
    help = "cosine: decay the learning rate to 0 over all the training steps"
    return option(default, help, choices=("constant", "cosine"))


def clip_norm_option(default: float):
    return option(
        default, "clip gradients to this global norm (0: no clipping)", non_negative_float
    )


def epochs_option(default: int | None, help: str = "passes over the training data"):
    return option(default, help, positive_int)


def batch_size_option(default: int | None, help: str = "sequences per step"):
    return option(default, help, positive_int)


def hidden_option(default: int):
    return option(default, "LSTM units", positive_int)


def sequences_option(default: int, which: str = "training"):
    return option(default, f"{which} sequences", positive_int)


def loop_option():
    return option(
        "auto",
        "where the LSTM's time steps run: auto (in C on an x86-64 CPU with AVX2 + FMA, else"
        " jax.lax.scan), scan, native (the C loop, or an error where it cannot run), or pallas"
        " (one Pallas kernel per direction: compiled on a CUDA GPU, interpreted elsewhere)",
        choices=LOOPS,
    )


def out_option(default: str | None):
    return option(default, "run directory: metrics, history, checkpoints, model", str)
