"""fibrosis: train, validate and batch-score a pulmonary-fibrosis classifier on chest X-rays."""
import os as _os

__version__ = "0.1.0"

# albumentations asks the package index for its newest version at import unless this is
# set: a clinical tool makes no network call its user did not ask for. Set here, before
# any submodule can import albumentations, and in os.environ, so every process started
# from this one (decode workers, the fork server, torchrun ranks) inherits it.
_os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
