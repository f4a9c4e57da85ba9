"""Needle-in-a-haystack probes: needle files, the haystack, building probes and locating spans in tokens.

A probe file is JSONL (one probe a line, loadable with `datasets.load_dataset("json", ...)`). Each
probe carries its full prompt text and character spans (the needle, the sentence that answers the
question, and the answer inside that sentence), so that scoring never has to rebuild the prompt; the
spans are mapped to token ids with the tokenizer's offset mapping at scoring time.

Probes of one length share one haystack order: at a given (length, depth) every needle is preceded by
the same text, and a shallower depth's prefix is a prefix of a deeper one's, so a scorer can compute
that prefix's KV once.

Modules: `probe` (the types), `needles`, `haystack`, `build`, `files`, `spans` (token view); the names
below are served from them on first use.
"""

from headprof.lazy import lazy_exports

_EXPORTS = {
    "build_probes": "headprof.probes.build",
    "check_grid": "headprof.probes.build",
    "encode_text": "headprof.probes.build",
    "render_prompt": "headprof.probes.build",
    "foreign_tokenizers": "headprof.probes.files",
    "load_probes": "headprof.probes.files",
    "write_probes": "headprof.probes.files",
    "clean_haystack": "headprof.probes.haystack",
    "load_haystack": "headprof.probes.haystack",
    "load_needles": "headprof.probes.needles",
    "select_needles": "headprof.probes.needles",
    "DEFAULT_DEPTHS": "headprof.probes.probe",
    "DEFAULT_LENGTHS": "headprof.probes.probe",
    "DEFAULT_SEED": "headprof.probes.probe",
    "EncodedProbe": "headprof.probes.probe",
    "INSTRUCTION": "headprof.probes.probe",
    "KINDS": "headprof.probes.probe",
    "Needle": "headprof.probes.probe",
    "Probe": "headprof.probes.probe",
    "SPANS": "headprof.probes.probe",
    "needle_key": "headprof.probes.probe",
    "probes_sha256": "headprof.probes.probe",
    "char_span_to_tokens": "headprof.probes.spans",
    "check_needle_in_context": "headprof.probes.spans",
    "context_span": "headprof.probes.spans",
    "copy_keys": "headprof.probes.spans",
    "encode_probe": "headprof.probes.spans",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
