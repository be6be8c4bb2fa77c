"""The `steerkit` command line. Each command parses options, calls the library, writes files.

Heavy libraries are imported inside commands so `steerkit --help` is instant. A SteerkitError
becomes one line on stderr and exit code 2 (a traceback only with --debug).
"""

from . import capture as _capture  # noqa: F401  (registers commands)
from . import corpus as _corpus  # noqa: F401
from . import export as _export  # noqa: F401
from . import intervene as _intervene  # noqa: F401
from . import models as _models  # noqa: F401
from . import phase as _phase  # noqa: F401
from . import quality as _quality  # noqa: F401
from . import serve as _serve  # noqa: F401
from . import steer_eval as _steer_eval  # noqa: F401
from . import vectors as _vectors  # noqa: F401
from .app import main
from .common import guard_floats

guard_floats(main)  # NaN / inf are refused by every float option, whichever command adds it

__all__ = ["main"]
