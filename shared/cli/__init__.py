"""`pulse`, the operator CLI (typer + rich). Entry point: `shared.cli.app:main`."""
