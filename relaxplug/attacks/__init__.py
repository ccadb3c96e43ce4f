"""Attacks: PGD on a guarantee's claims, certificate checks, AutoAttack, the soundness sweep."""
