"""Model-free DNA identifiers: 5-mer count profiles (:mod:`.kmer`) and alignment identity (:mod:`.identity`)."""
