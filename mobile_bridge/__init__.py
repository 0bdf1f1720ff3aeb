"""mobile_bridge — how phones reach the vault.

Uses pcloud's public API only. Not built yet: phones currently run the same
node as any device with the `on-demand` policy (issue 5); a dedicated bridge
is future work.
"""
