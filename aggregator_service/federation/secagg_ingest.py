"""Taking in one masked vector: decode, check, fold into the round's masked sum.

The body is a msgpack message (docs/protocol.md, "Secure aggregation"): its fields are
checked by `MaskedHeader`, the vector by the wire codec against the one spec it may have
(uint32, shape [L] with L the floating values of the model and of the update groups the
strategy asks for), and the client's weight against
the round's weighting rule, all before the state's lock is taken to fold it.
"""

from __future__ import annotations

from pydantic import ValidationError

from aggregator_service.federation.secagg_desk import SecAggDesk
from shared.config import SecAggConfig
from shared.errors import Forbidden, InvalidUpdate
from shared.secagg.messages import MaskedHeader, PostReply
from shared.secagg.vector import vector_length
from shared.wire import TensorSpec, check_protocol, decode_message, decode_weights

__all__ = ["client_weight", "ingest_masked"]


def ingest_masked(
    body: bytes | bytearray | memoryview,
    *,
    desk: SecAggDesk,
    spec: dict[str, TensorSpec],
    group_specs: dict[str, dict[str, TensorSpec]],
    options: SecAggConfig,
    sender: str | None = None,
) -> PostReply:
    """Fold one client's masked vector into the round's sum, or raise why not."""
    message = decode_message(body)
    check_protocol(message, supported=(1,))  # the masked vector alone: no tensor groups
    try:
        header = MaskedHeader.model_validate(message)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidUpdate("invalid_secagg", f"invalid masked message: {problems}") from None
    if sender is not None and header.client_id != sender:
        raise Forbidden(
            "wrong_client", f"the bearer token does not belong to client_id {header.client_id!r}"
        )
    expected = {"masked": TensorSpec((vector_length(spec, group_specs),), "uint32")}
    masked = decode_weights({"masked": header.masked}, spec=expected)["masked"]
    if masked.size and int(masked.max()) >= options.modulus:
        raise InvalidUpdate(
            "invalid_secagg",
            f"a masked value is {int(masked.max())}, outside the ring of modulus {options.modulus}",
        )
    weight = client_weight(options, header.num_examples)
    return desk.fold_masked(header, masked, weight, len(body))


def client_weight(options: SecAggConfig, num_examples: int) -> float:
    """Return the weight a client multiplied its update by: 1, or n_i / max_num_examples."""
    if options.weighting == "uniform":
        return 1.0
    bound = options.max_num_examples
    assert bound is not None  # the config requires it with this weighting
    if num_examples > bound:
        raise InvalidUpdate(
            "invalid_secagg",
            f"num_examples ({num_examples}) exceeds secagg.max_num_examples ({bound}): the "
            "weight n_i / max_num_examples must stay at most 1",
        )
    return num_examples / bound
