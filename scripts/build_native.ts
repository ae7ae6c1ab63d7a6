/**
 * Builds `build/libmagicpig.so` from `cuda/`.
 *
 * With `nvcc` on the PATH (or under `$CUDA_HOME/bin`, `/usr/local/cuda/bin`) the `.cu`
 * files are compiled for Hopper (sm_90; files named `*_sm90a.cu` for sm_90a, which wgmma
 * needs) and the CUDA runtime is linked statically; where
 * the toolkit has cuBLAS (`libcublas.so` next to the runtime) it is linked too and
 * `MP_HAVE_CUBLAS` is defined. Without `nvcc` only the C++ files are compiled and the
 * library is CPU-only. The API is the same either way: `mp_device_count()` says which.
 *
 * Objects are rebuilt when their source, or any header under `cuda/`, is newer than the
 * object. Outputs are written to temporary names and renamed, so a concurrent reader never
 * sees a half-written library.
 *
 * Environment: `MP_BUILD_DIR` (default `build/`), `MP_NO_CUDA=1` (CPU-only build even
 * where `nvcc` exists), `MP_NO_CUBLAS=1`, `CXX` (default `g++`), `NVCC`, `CUDA_HOME`,
 * `MP_CUDA_ARCH` (default `90`), `MP_JOBS`.
 *
 * @example
 * ```sh
 * deno task build
 * ```
 */

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const srcDir = `${root}/cuda`;
const buildDir = Deno.env.get("MP_BUILD_DIR") ?? `${root}/build`;
const objDir = `${buildDir}/obj`;
const libPath = `${buildDir}/libmagicpig.so`;

interface Toolchain {
  cxx: string;
  nvcc: string | null;
  cudaHome: string | null;
  cublas: boolean;
  arch: string;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function which(cmd: string): Promise<string | null> {
  if (cmd.includes("/")) return (await exists(cmd)) ? cmd : null;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir && await exists(`${dir}/${cmd}`)) return `${dir}/${cmd}`;
  }
  return null;
}

async function findToolchain(): Promise<Toolchain> {
  const cxx = Deno.env.get("CXX") ?? "g++";
  if (!(await which(cxx))) {
    throw new Error(`Cannot build the native library: the C++ compiler "${cxx}" was not found`);
  }
  let nvcc: string | null = null;
  let cudaHome: string | null = null;
  if (Deno.env.get("MP_NO_CUDA") !== "1") {
    const candidates = [
      Deno.env.get("NVCC"),
      Deno.env.get("CUDA_HOME") ? `${Deno.env.get("CUDA_HOME")}/bin/nvcc` : undefined,
      "nvcc",
      "/usr/local/cuda/bin/nvcc",
    ];
    for (const c of candidates) {
      if (!c) continue;
      const found = await which(c);
      if (found) {
        nvcc = await Deno.realPath(found);
        break;
      }
    }
    if (nvcc) {
      // /usr/local/bin/nvcc may be a wrapper script: prefer CUDA_HOME, then the real path.
      const home = Deno.env.get("CUDA_HOME");
      if (home && await exists(`${home}/include/cuda_runtime.h`)) cudaHome = home;
      else if (
        nvcc.endsWith("/bin/nvcc") &&
        await exists(nvcc.replace(/bin\/nvcc$/, "include/cuda_runtime.h"))
      ) {
        cudaHome = nvcc.replace(/\/bin\/nvcc$/, "");
      } else if (await exists("/usr/local/cuda/include/cuda_runtime.h")) {
        cudaHome = "/usr/local/cuda";
      }
      if (!cudaHome) {
        throw new Error(
          `Cannot build the native library: found "${nvcc}" but no CUDA toolkit beside it; set CUDA_HOME`,
        );
      }
    }
  }
  let cublas = false;
  if (cudaHome && Deno.env.get("MP_NO_CUBLAS") !== "1") {
    for (const dir of ["lib64", "lib", "targets/x86_64-linux/lib"]) {
      if (
        await exists(`${cudaHome}/${dir}/libcublas.so`) &&
        await exists(`${cudaHome}/${dir}/libcublasLt.so`)
      ) {
        cublas = true;
        break;
      }
    }
  }
  return { cxx, nvcc, cudaHome, cublas, arch: Deno.env.get("MP_CUDA_ARCH") ?? "90" };
}

async function walk(dir: string, out: string[] = []): Promise<string[]> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) await walk(path, out);
    else out.push(path);
  }
  return out;
}

async function mtime(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

async function run(cmd: string[], what: string): Promise<void> {
  const out = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) {
    throw new Error(`Cannot build the native library: ${what} failed\n$ ${cmd.join(" ")}\n${text}`);
  }
  if (text.trim() && Deno.env.get("MP_BUILD_VERBOSE") === "1") console.error(text.trim());
}

async function main(): Promise<void> {
  const started = performance.now();
  const tc = await findToolchain();
  const files = await walk(srcDir);
  const headers = files.filter((f) => /\.(h|hpp|cuh|inc)$/.test(f));
  const cxxSources = files.filter((f) => f.endsWith(".cpp")).sort();
  const cuSources = tc.nvcc ? files.filter((f) => f.endsWith(".cu")).sort() : [];
  const headerTime = Math.max(0, ...(await Promise.all(headers.map(mtime))));
  const scriptTime = await mtime(new URL(import.meta.url).pathname);
  await Deno.mkdir(objDir, { recursive: true });

  const defines = ["-DMP_BUILDING_LIBRARY"];
  if (tc.nvcc) defines.push("-DMP_HAVE_CUDA=1");
  if (tc.cublas) defines.push("-DMP_HAVE_CUBLAS=1");
  const includes = [`-I${srcDir}/include`, `-I${srcDir}`];
  if (tc.cudaHome) includes.push(`-I${tc.cudaHome}/include`);
  const hostFlags = [
    "-std=c++17",
    "-O3",
    "-march=native",
    "-fopenmp",
    "-fPIC",
    "-fvisibility=hidden",
    "-fno-math-errno",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
  ];

  interface Job {
    src: string;
    obj: string;
    cmd: string[];
  }
  const jobs: Job[] = [];
  const objects: string[] = [];
  const flagTag = `${tc.nvcc ? "cuda" : "cpu"}${tc.cublas ? "-cublas" : ""}`;
  for (const src of [...cxxSources, ...cuSources]) {
    const rel = src.slice(srcDir.length + 1).replace(/[\/]/g, "__");
    const obj = `${objDir}/${flagTag}__${rel}.o`;
    objects.push(obj);
    const objTime = await mtime(obj);
    if (objTime > Math.max(await mtime(src), headerTime, scriptTime)) continue;
    // Files named *_sm90a.cu hold Hopper-only kernels (wgmma, setmaxnreg): for arch 90 they
    // are compiled for sm_90a (machine code only, MP_SM90A defined); elsewhere like any .cu
    // (their device code is guarded, and their launchers report "not available").
    const sm90a = src.endsWith("_sm90a.cu") && tc.arch === "90";
    const cmd = src.endsWith(".cu")
      ? [
        tc.nvcc!,
        "-std=c++17",
        "-O3",
        ...(sm90a
          ? ["-gencode=arch=compute_90a,code=sm_90a", "-DMP_SM90A=1"]
          : [`-gencode=arch=compute_${tc.arch},code=[sm_${tc.arch},compute_${tc.arch}]`]),
        "--expt-relaxed-constexpr",
        "-Xcompiler",
        "-fPIC,-fvisibility=hidden,-fopenmp,-march=native",
        ...defines,
        ...includes,
        "-c",
        src,
        "-o",
        `${obj}.tmp`,
      ]
      : [tc.cxx, ...hostFlags, ...defines, ...includes, "-c", src, "-o", `${obj}.tmp`];
    jobs.push({ src, obj, cmd });
  }

  const parallel = Number(Deno.env.get("MP_JOBS") ?? navigator.hardwareConcurrency ?? 2);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const job = jobs[next++];
      await run(job.cmd, `compiling ${job.src.slice(root.length + 1)}`);
      await Deno.rename(`${job.obj}.tmp`, job.obj);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, parallel) }, worker));

  const libTime = await mtime(libPath);
  const newest = Math.max(0, ...(await Promise.all(objects.map(mtime))));
  if (jobs.length > 0 || libTime < newest || libTime === 0) {
    const link = [tc.cxx, "-shared", "-fopenmp", "-o", `${libPath}.tmp`, ...objects];
    if (tc.nvcc && tc.cudaHome) {
      const libDirs = ["lib64", "targets/x86_64-linux/lib", "lib"].map((d) =>
        `${tc.cudaHome}/${d}`
      );
      for (const d of libDirs) link.push(`-L${d}`);
      link.push("-lcudart_static");
      if (tc.cublas) {
        link.push("-lcublasLt", "-lcublas");
        for (const d of libDirs) link.push(`-Wl,-rpath,${d}`);
      }
      link.push("-lrt", "-ldl", "-lpthread");
    }
    link.push("-Wl,--no-undefined", "-Wl,-z,defs");
    await run(link, "linking libmagicpig.so");
    await Deno.rename(`${libPath}.tmp`, libPath);
  }
  const secs = ((performance.now() - started) / 1000).toFixed(1);
  console.error(
    `built ${libPath.slice(root.length + 1)} (cuda: ${tc.nvcc ? "yes" : "no"}, cublas: ${
      tc.cublas ? "yes" : "no"
    }, ${objects.length} objects, ${jobs.length} compiled) in ${secs}s`,
  );
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(e instanceof Error ? e.message : String(e));
    Deno.exit(1);
  }
}
