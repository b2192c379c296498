"""Check that a portable build of snnsparse._C cannot execute an instruction the CPU lacks.

    python tools/check_isa_symbols.py [path/to/_C*.so | file.o ...]   (default: the installed snnsparse._C)

The portable build compiles the glue for baseline x86-64 and the kernels three times
(csrc/cpu/isa_*.cpp). The hazard is a function compiled for a wider ISA reaching code that runs
before, or instead of, the runtime CPU check: an inline/template function from a header compiled
inside a `#pragma GCC target` region is a weak symbol that the linker may pick for every caller
(csrc/cpu/isa_variant.h explains it). So, over the disassembly (objdump -d -C) of every function:

  * outside the namespaces snnsparse::cpu::avx512 and snnsparse::cpu::avx2, no instruction beyond
    baseline x86-64 (no VEX/EVEX encoding, no ymm/zmm/k register, no SSE3..SSE4.2, POPCNT, LZCNT,
    BMI, MOVBE, ...);
  * inside snnsparse::cpu::avx2, nothing from AVX-512 (no zmm, no k mask registers, no
    xmm16-31/ymm16-31, no EVEX-only mnemonic).

It also confirms that both wider variants do contain their instructions (else the check would pass
vacuously, e.g. if the pragma silently had no effect). Exit status 0 when clean, 1 with a report.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict

AVX512_NS = "snnsparse::cpu::avx512::"
AVX2_NS = "snnsparse::cpu::avx2::"

# Beyond baseline x86-64 (SSE2) without a VEX prefix: SSE3, SSSE3, SSE4.1/4.2, POPCNT, LZCNT, BMI1/2,
# MOVBE, F16C... (tzcnt is excluded: gcc emits `rep bsf` for __builtin_ctz on baseline, which objdump
# prints as tzcnt and which older CPUs execute as bsf, the same result for a nonzero input.)
_BEYOND_SSE2 = re.compile(
    r"^(addsubp[sd]|hadd|hsub|movddup|movsh|movsl|lddqu|fisttp|"  # SSE3
    r"pshufb|phadd|phsub|pmaddubsw|pmulhrsw|psign|pabs[bwd]|palignr|"  # SSSE3
    r"pblendvb|pblendw|blendv?p[sd]|dpp[sd]|extractps|insertps|mpsadbw|packusdw|pcmpeqq|pextr[bdq]|"
    r"phminposuw|pinsr[bdq]|pmax(sb|sd|ud|uw)|pmin(sb|sd|ud|uw)|pmov[sz]x|pmuldq|pmulld|ptest|round[ps][sd]|"
    r"movntdqa|"  # SSE4.1
    r"pcmpgtq|pcmp[ei]str[im]|crc32|"  # SSE4.2
    r"popcnt|lzcnt|andn|bextr|blsi|blsmsk|blsr|bzhi|pdep|pext|sarx|shlx|shrx|rorx|mulx|movbe|adcx|adox)\b")
_WIDE_REG = re.compile(r"%[yz]mm\d+|%k[0-7]\b")
_AVX512_ONLY = re.compile(r"%zmm\d+|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b|\{%k[0-7]\}")
_EVEX_MNEMONIC = re.compile(
    r"^(vpternlog|vmovdq[au](8|16|32|64)|vpbroadcastm|vpcompress|vcompress|vpexpand|vexpand|vperm[it]2|"
    r"vpmov[a-z0-9]*2m|vpmovm2|vfixupimm|vrndscale|vgetexp|vgetmant|vrsqrt14|vrcp14|vscalef|vreduce|vrange|"
    r"vfpclass|vpconflict|vplzcnt|vpro[lr]v?[dq]|vpsravw|vpsrav[q]|vcvt[a-z]*2u|vcvtu|vcvt[a-z]*qq|"
    r"v[a-z0-9]*(32x[248]|64x[24]))")
_FUNC = re.compile(r"^[0-9a-f]+ <(.*)>:$")
_INSN = re.compile(r"^\s+[0-9a-f]+:\s+(\S+)\s*(.*)$")


def default_target() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    hits = sorted(glob.glob(os.path.join(root, "snnsparse", "_C*.so")))
    if hits:
        return hits[0]
    import importlib.util
    spec = importlib.util.find_spec("snnsparse._C")
    if spec is None or not spec.origin:
        raise SystemExit("snnsparse._C not found; pass the path of the .so")
    return spec.origin


def disassemble(path: str):
    """Yields (function, mnemonic, operands) for every instruction of path."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise SystemExit("objdump not found (binutils)")
    out = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", path], capture_output=True, text=True,
                         check=True).stdout
    fn = "?"
    for line in out.splitlines():
        m = _FUNC.match(line)
        if m:
            fn = m.group(1)
            continue
        m = _INSN.match(line)
        if m:
            yield fn, m.group(1), m.group(2)


def check(paths) -> int:
    bad = defaultdict(set)  # function -> offending mnemonics
    seen = {"avx512": 0, "avx2": 0}
    nfunc = set()
    for path in paths:
        for fn, mn, ops in disassemble(path):
            nfunc.add(fn)
            in512, in2 = AVX512_NS in fn, AVX2_NS in fn
            if in512:
                if _AVX512_ONLY.search(ops):
                    seen["avx512"] += 1
                continue
            wide = mn.startswith("v") or bool(_WIDE_REG.search(ops)) or bool(_BEYOND_SSE2.match(mn))
            if in2:
                if mn.startswith("v") and "ymm" in ops:
                    seen["avx2"] += 1
                if _AVX512_ONLY.search(ops) or _EVEX_MNEMONIC.match(mn):
                    bad[fn].add(f"{mn} {ops}".strip())
                continue
            if wide:
                bad[fn].add(f"{mn} {ops}".strip())
    print(f"checked {len(nfunc)} functions in {', '.join(paths)}")
    print(f"AVX-512 instructions in {AVX512_NS}*: {seen['avx512']}; AVX2 (ymm) instructions in {AVX2_NS}*: "
          f"{seen['avx2']}")
    status = 0
    if bad:
        status = 1
        print(f"FAIL: {len(bad)} function(s) use instructions beyond their variant:")
        for fn in sorted(bad):
            ex = sorted(bad[fn])
            print(f"  {fn}: {len(ex)} kinds, e.g. {'; '.join(ex[:3])}")
    for name in ("avx512", "avx2"):
        if seen[name] == 0:
            status = 1
            print(f"FAIL: no {name} instruction in the {name} namespace: the variant was not compiled for it "
                  f"(a SNNSPARSE_MARCH build, or the target pragma had no effect)")
    if status == 0:
        print("OK: beyond-baseline instructions only inside the avx512/avx2 kernel namespaces")
    return status


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return check(argv or [default_target()])


if __name__ == "__main__":
    sys.exit(main())
