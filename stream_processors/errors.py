"""The processors' one error root; ``retriable`` decides retry versus dead-letter."""


class ProcessorError(Exception):
    retriable = False

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRecord(ProcessorError):
    """A message that cannot be decoded or is not what its topic carries: dead-lettered."""

