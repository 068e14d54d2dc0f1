"""One txt2img generation with stable-diffusion.cpp (through stable-diffusion-cpp-python), timed:
the model load (with the weights converted to WTYPE as it loads them) and the generation apart.

    sdcpp_generate.py MODEL WTYPE THREADS STEPS SIZE OUT.png

Prints one JSON line: load and generation seconds, peak RSS (ru_maxrss) of the process.
"""
import json
import resource
import sys
import time


def main() -> int:
    model, wtype, threads, steps, size, out = sys.argv[1:7]
    from stable_diffusion_cpp import StableDiffusion

    start = time.time()
    sd = StableDiffusion(model_path=model, wtype=wtype, n_threads=int(threads), verbose=False)
    loaded = time.time()
    images = sd.generate_image(prompt="a photograph of an astronaut riding a horse", width=int(size), height=int(size),
                               sample_steps=int(steps), cfg_scale=7.5, seed=1)
    done = time.time()
    images[0].save(out)
    print(json.dumps({"side": "stable-diffusion.cpp", "wtype": wtype, "threads": int(threads), "steps": int(steps),
                      "load_seconds": round(loaded - start, 2), "generate_seconds": round(done - loaded, 2),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
