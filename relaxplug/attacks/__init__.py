"""Attacks: PGD on a guarantee's claims, certificate checks, AutoAttack, the soundness sweep.

- :mod:`~relaxplug.attacks.pgd`: PGD on one claim ``g_{W,L} > 0`` per row;
- :mod:`~relaxplug.attacks.claims`: attack claim batches, check certificates;
- :mod:`~relaxplug.attacks.empirical`: empirical robustness of a guarantee;
- :mod:`~relaxplug.attacks.autoattack`: AutoAttack on top-1 claims;
- :mod:`~relaxplug.attacks.report`: ``relaxplug attack``'s record;
- :mod:`~relaxplug.attacks.soundness`: the soundness sweep.
"""

from relaxplug.attacks.claims import ClaimCheck as ClaimCheck
from relaxplug.attacks.claims import attack_claims as attack_claims
from relaxplug.attacks.claims import check_certificates as check_certificates
from relaxplug.attacks.empirical import AttackResult as AttackResult
from relaxplug.attacks.empirical import attack_guarantee as attack_guarantee
from relaxplug.attacks.settings import AttackSettings as AttackSettings

__all__ = ["AttackResult", "AttackSettings", "ClaimCheck", "attack_claims", "attack_guarantee", "check_certificates"]
