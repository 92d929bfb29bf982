"""A cache-line prefetch for numba kernels: LLVM's ``llvm.prefetch`` intrinsic.

numba has no prefetch of its own. A batch lookup over a table of tens of MB
misses the cache on nearly every number; asking for the lines of numbers a few
places ahead lets those misses overlap while the core works on the current
one, where an ordinary load would hold up the core until its line arrived.
"""

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I32 = ir.IntType(32)
_BYTE_POINTER = ir.IntType(8).as_pointer()
_PREFETCH_TYPE = ir.FunctionType(ir.VoidType(), [_BYTE_POINTER, _I32, _I32, _I32])
# llvm.prefetch(address, rw: 0 read, locality: 3 keep in every cache level, 1 data)
_READ, _KEEP, _DATA = (ir.Constant(_I32, v) for v in (0, 3, 1))


def _prefetch_typing(typingctx: Any, array: types.Array, index: types.Integer) -> Any:
    """numba's typing of ``prefetch(array, index)``: its signature and its code generator."""
    del typingctx

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        # numba's cgutils helpers are unannotated.
        address = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]
            context, builder, array_type, view, [args[1]], wraparound=False
        )
        function = cgutils.get_or_insert_function(  # type: ignore[no-untyped-call]
            builder.module, _PREFETCH_TYPE, "llvm.prefetch.p0"
        )
        builder.call(function, [builder.bitcast(address, _BYTE_POINTER), _READ, _KEEP, _DATA])
        return context.get_dummy_value()

    return types.void(array, index), codegen


if TYPE_CHECKING:
    # What a kernel calls. numba's stubs give an intrinsic the typing function's
    # signature (typingctx first, which numba supplies itself), so mypy is shown
    # the signature kernels actually use.
    def prefetch(array: npt.NDArray[Any], index: int | np.integer[Any]) -> None:
        """``prefetch(array, i)`` in a numba kernel: start loading the line of ``array[i]``.

        A hint, never a fault: no bounds check, and an index outside the array loads
        nothing that matters. Returns nothing.
        """

else:
    prefetch = intrinsic(_prefetch_typing)
