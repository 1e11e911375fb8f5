"""Lua scripts run inside Redis (a package only so that the ``*.lua`` files ship as package data)."""
