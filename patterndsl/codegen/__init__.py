"""Code generation: element predicates as Triton expressions (:mod:`.emit`), Jinja
rendering of the kernels (:mod:`.render`) and the per-part launchers of the generated
Triton kernels (:mod:`.triton_backend`)."""
