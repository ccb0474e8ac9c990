"""How good a tomogram is: scores against a reference and half-map FSC
(:mod:`.metrics`), and the comparison figures (:mod:`.figures`)."""
