"""One error hierarchy for the whole library; the CLI maps it to messages and exit codes once.

Library code raises these and never prints or exits. Every message is one line saying what is
wrong; ``hint`` says what to do about it.

Exit codes (documented in the README):

    1  unexpected internal error (a bug: rerun with EDGE_RUN_DEBUG=1 and report it)
    2  usage error      bad flag combination, bad option value
    3  input error      missing / corrupt / unsupported checkpoint, artifact, profile, corpus
    4  resource error   not enough memory or disk, output not writable, nothing fits the budget
    5  integrity error  artifact does not match its manifest
    6  cluster error    a worker of a --cluster is down, busy, stalled, of another protocol version, or went away
                        while generating; llama.cpp's RPC library is missing and cannot be built
    130 interrupted     SIGINT / SIGTERM; partial files were removed
"""

from __future__ import annotations


class EdgeRunError(Exception):
    """Base class: a failure the user can act on."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f". {self.hint.rstrip('.')}"
        return " ".join(text.split())


class UsageError(EdgeRunError):
    exit_code = 2


class InputError(EdgeRunError):
    exit_code = 3


class CheckpointError(InputError):
    """A Hugging Face checkpoint directory that cannot be converted."""


class UnsupportedArchitectureError(CheckpointError):
    pass


class ArtifactError(InputError):
    """A GGUF / ONNX artifact or its manifest that cannot be read."""


class ProfileError(InputError):
    pass


class CorpusError(InputError):
    pass


class ResourceError(EdgeRunError):
    exit_code = 4


class OutputExistsError(ResourceError):
    pass


class NothingFitsError(ResourceError):
    pass


class InsufficientMemoryError(ResourceError):
    pass


class IntegrityError(EdgeRunError):
    exit_code = 5


class ClusterError(EdgeRunError):
    exit_code = 6


class Interrupted(EdgeRunError):
    exit_code = 130
