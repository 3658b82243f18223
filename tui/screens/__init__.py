"""One module per step of the install, plus the dialogs and the help screen."""
