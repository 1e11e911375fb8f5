"""The ledger's Lua scripts (a package only so that the ``*.lua`` files ship as package data)."""
