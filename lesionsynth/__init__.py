"""lesionsynth, the application: the command line that ties the ML library (``models``) and the services'
clients (``services.client``) together. ``models`` imports nothing of ``services``; only this package
(and the services themselves) may import both."""
