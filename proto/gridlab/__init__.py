"""gridlab: one queue for a lab's GPU machines (DESIGN.md).

The namespace root. Subpackages live in folders named for what they hold:
``gridlab.v1`` (the API), ``gridlab.common``, ``gridlab.scheduler``,
``gridlab.agent``, ``gridlab.client``, ``gridlab.trainer``.
"""

__version__ = "0.1.0"
