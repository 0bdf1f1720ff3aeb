"""tui — the `pcloud` terminal app (textual): `pcloud` with no command opens it.

    from tui.app import make_app
    make_app(vault_dir).run()

Layout: `app` (the App and the `make_app` factory shared by the CLI and the
tests), `screens/` (the main tabbed screen, dialogs, help), `widgets/` (one
panel per area), `messages` (app-wide messages), `model` (UI-free: polls the
node over the control channel and reads the vault through `pcloud.Vault`;
`FixedModel` replays a recording), `pcloud.tcss` (the one stylesheet). The
app uses pcloud's public API and the node's control ops only.
"""
