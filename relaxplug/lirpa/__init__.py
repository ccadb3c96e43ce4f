"""auto_LiRPA glue shared by the bound-propagation certifiers and CROWN-IBP training.

- :mod:`~relaxplug.lirpa.api`: the installed version and its API differences (0.3 and 0.7.x);
- :mod:`~relaxplug.lirpa.forms`: exact rewrites of models into auto_LiRPA-friendly forms;
- :mod:`~relaxplug.lirpa.guard`: the L2 input guard;
- :mod:`~relaxplug.lirpa.spec`: spec rows (which margins a request needs);
- :mod:`~relaxplug.lirpa.cache`: the conversion cache, valid only for the exact computation;
- :mod:`~relaxplug.lirpa.tolerance`: the floating-point error model.

Importing this package does not import auto_LiRPA (:func:`available` checks for it); the first
conversion does, with the shims its version needs.
"""

from relaxplug.lirpa.api import AUTO_LIRPA_INSTALL_HINT as AUTO_LIRPA_INSTALL_HINT
from relaxplug.lirpa.api import LirpaError as LirpaError
from relaxplug.lirpa.api import available as available
from relaxplug.lirpa.api import version as version
from relaxplug.lirpa.api import version_string as version_string
from relaxplug.lirpa.cache import Bounded as Bounded
from relaxplug.lirpa.cache import Fingerprint as Fingerprint
from relaxplug.lirpa.cache import bounded_module as bounded_module
from relaxplug.lirpa.cache import clear_cache as clear_cache
from relaxplug.lirpa.forms import AffineForm as AffineForm
from relaxplug.lirpa.forms import fallback_form as fallback_form
from relaxplug.lirpa.forms import fold_leading_affine as fold_leading_affine
from relaxplug.lirpa.forms import lower_for_lirpa as lower_for_lirpa
from relaxplug.lirpa.forms import shared_lirpa_form as shared_lirpa_form
from relaxplug.lirpa.guard import IdentityPrefix as IdentityPrefix
from relaxplug.lirpa.guard import l2_input_is_safe as l2_input_is_safe
from relaxplug.lirpa.spec import SpecRows as SpecRows
from relaxplug.lirpa.spec import spec_matrix as spec_matrix
from relaxplug.lirpa.spec import spec_rows as spec_rows
from relaxplug.lirpa.tolerance import error_model as error_model

__all__ = [
    "AUTO_LIRPA_INSTALL_HINT",
    "AffineForm",
    "Bounded",
    "Fingerprint",
    "IdentityPrefix",
    "LirpaError",
    "SpecRows",
    "available",
    "bounded_module",
    "clear_cache",
    "error_model",
    "fallback_form",
    "fold_leading_affine",
    "l2_input_is_safe",
    "lower_for_lirpa",
    "shared_lirpa_form",
    "spec_matrix",
    "spec_rows",
    "version",
    "version_string",
]
