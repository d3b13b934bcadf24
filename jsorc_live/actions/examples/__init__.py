"""Example action modules under the names of JSORC's actions (jaseci_ai_kit's models), with
numpy "models" in place of the real ones: weights allocated at load (real memory; 1/50 of the
real size by default, ``JSORC_ACTION_SCALE`` or ``setup(memory_mb=...)`` for more), work
proportional to the input on every call (real CPU). See ``_model.py``.

Each module's actions are in its own group, the module's name: ``use_enc.encode``,
``bi_enc.cos_sim_score``, ...; each has ``setup(memory_mb=None, seed=0)``.
"""

EXAMPLES = (
    "use_enc", "use_qa", "text_seg", "sbert_sim", "tfm_ner", "bi_enc", "cl_summer", "ent_ext",
    "vc_tts", "stt",
)
