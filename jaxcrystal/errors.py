"""The one base class of errors a user fixes (a file, a flag, a folder).

Library code raises subclasses of `UserError` with a message that names the
file, row, flag or folder and says what to do; `jaxcrystal.cli.run` prints
such an error as one line on stderr and exits with code 2. Anything else is
a bug and keeps its traceback.
"""


class UserError(Exception):
  """An input, flag or folder the user must change; the message says how."""


class DataError(UserError, ValueError):
  """A file or row that cannot be read, with where and why."""


class OutputExistsError(UserError, FileExistsError):
  """An output folder already holds results and `overwrite` was not given."""


class IncompleteOutputError(UserError):
  """A folder written by a run that did not finish."""


class ConfigChangedError(UserError):
  """`--resume` with a configuration that would change the run's results."""


class NonFiniteUpdateError(UserError):
  """A training step would have made the parameters non-finite."""


class TrainingDivergedError(UserError):
  """Most recent training steps were skipped for non-finite values."""


class NotARunError(UserError, FileNotFoundError):
  """A folder that is not a run of the kind asked for."""


class ConfigError(UserError, ValueError):
  """A setting of a component (process, network, sampler...) that is not
  valid; the message names the component and the field."""
