"""N:M structured sparsity: masks along the reduction dimension and the channel permutations that
let them keep more weight magnitude.

Plain tensor math shared by the stages that need it (importance prices a mask, search chooses
permutations, transform applies both); it imports nothing else of hwprune.
"""
