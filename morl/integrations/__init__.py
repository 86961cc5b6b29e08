"""morl's methods inside other libraries' trainers.

- :mod:`morl.integrations.host`: :class:`~morl.integrations.host.HostedStep`, morl's step (forecast, controller,
  clipped weights, diagnostics) driven for a trainer that owns generation and the update; no other library needed;
- :mod:`morl.integrations.trl`: a morl weight controller, the diagnostics, the interference forecast and the alarms
  in TRL's ``GRPOTrainer`` (``pip install "morl[trl]"``).

Each integration is imported on its own, so ``import morl`` never imports the other library.
"""
