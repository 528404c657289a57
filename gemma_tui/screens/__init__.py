"""The app's screens: one base screen per mode (Dataset now), plus help and modals."""
