"""Recovery after pruning: distillation from the unpruned model, on one process or many."""
