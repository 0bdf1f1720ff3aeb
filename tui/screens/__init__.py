"""Screens: the main tabbed screen and the modal dialogs."""
