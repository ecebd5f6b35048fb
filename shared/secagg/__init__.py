"""Secure aggregation (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020): its math.

Pure functions both sides use: `quantize` (fixed point in Z_2^32), `shamir` (secret
sharing), `keys` (X25519, HKDF, AES-GCM), `masks` (PRG expansion, masking, unmasking),
`graph` (who masks with whom) and `vector` (what is masked). The messages and stages are
specified in docs/protocol.md ("Secure aggregation").
"""
