"""ERP connectors behind one read-only interface; ``Settings.erp`` picks one by name.

Adding an ERP is one module with an :class:`~connectors.erp.base.ErpConnector` subclass
that has a ``from_settings(settings, options, timeout)`` class method, plus one line in
:data:`ERP_MODULES`.
"""

from __future__ import annotations

import importlib

from connectors.erp.base import ErpConnector

# Settings.erp value -> (module, class name).
ERP_MODULES = {
    "netsuite": ("connectors.erp.netsuite", "NetSuiteConnector"),
    "businesscentral": ("connectors.erp.businesscentral", "BusinessCentralConnector"),
}


def build_erp(settings, policy_options: dict, *, timeout: float) -> ErpConnector | None:
    """Return the configured ERP connector, or ``None`` when ``settings.erp`` is unset.

    ``policy_options`` is the parsed policy file; the connector reads its own table
    (``[netsuite]`` or ``[businesscentral]``) from it.
    """
    if not settings.erp:
        return None
    if settings.erp not in ERP_MODULES:
        raise ValueError(
            f"erp: unknown ERP {settings.erp!r}, expected one of {sorted(ERP_MODULES)}"
        )
    module_name, class_name = ERP_MODULES[settings.erp]
    connector_class = getattr(importlib.import_module(module_name), class_name)
    return connector_class.from_settings(
        settings, policy_options.get(settings.erp, {}), timeout=timeout
    )


__all__ = ["ERP_MODULES", "ErpConnector", "build_erp"]
