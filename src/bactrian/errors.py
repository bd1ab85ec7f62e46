"""Errors a user can act on. Library code raises these; only the CLI prints them."""


class BactrianError(Exception):
    """Base class of every error bactrian reports to its user."""


class ConfigError(BactrianError):
    """An option, flag or config file value is invalid."""


class DataError(BactrianError):
    """Instruction data is malformed; the message names the file, the line or row, and the field."""


class ModelError(BactrianError):
    """A model, tokenizer or adapter cannot be loaded or does not fit the request."""


class UnknownModel(ModelError):
    """A request named a model (adapter) that is not loaded."""


class EndpointError(BactrianError):
    """An endpoint cannot be used (unreachable, key refused, quota exhausted): the job stops, keeping what it did."""


class TrainingError(BactrianError):
    """Training cannot go on as asked (a non-finite loss or weights): the message names the step and what to do."""


class QueueFull(BactrianError):
    """More requests are waiting than the server accepts (`serve --max_queue`): retry shortly."""
