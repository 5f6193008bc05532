"""Throwaway Debian test hosts on systemd-nspawn for Molecule and inventories/local.

Run as ``.venv/bin/python -m testhosts --help`` (or ``testhosts/hostctl``).
Everything it creates is named so it can find and remove exactly that again:
the bridge ``aabr0`` (link alias ``assistantapp-testhosts``), the nftables
table ``inet assistantapp_testhosts``, host directories under the state dir and
the supervisor processes recorded there.
"""
