"""Signature policy: containers-policy.json(5), containers-registries.d(5), simple signing
(GPG) and cosign verification, and the verdict the pull path asks for.

A pure package: no gRPC, no registry client. The caller loads a `Policy` and a `RegistriesD`,
builds an `Evaluator` (one per load, with a new generation), and asks it for a `Verdict` with
the reference as pulled and the manifest digest actually fetched.
"""

from linerd.policy.errors import PolicyError
from linerd.policy.evaluator import Evaluator, Verdict
from linerd.policy.load import load_evaluator, load_evaluator_sync
from linerd.policy.policyfile import Policy, load_policy, parse_policy
from linerd.policy.registriesd import RegistriesD, load_dir, parse_files
from linerd.policy.sigstore import Attachment, SignatureArtifacts

__all__ = [
    "Attachment",
    "Evaluator",
    "Policy",
    "PolicyError",
    "RegistriesD",
    "SignatureArtifacts",
    "Verdict",
    "load_dir",
    "load_evaluator",
    "load_evaluator_sync",
    "load_policy",
    "parse_files",
    "parse_policy",
]
