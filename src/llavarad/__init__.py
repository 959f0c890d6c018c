"""llavarad: open, lightweight chest X-ray report generation (LLaVA-Rad).

The library imports without training or serving extras; heavy modules (torch, transformers) are
imported by the submodules that need them, not here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
