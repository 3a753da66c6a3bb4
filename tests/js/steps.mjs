// What every Node.js check here shares: settings from the environment, a run made of named
// steps each under its own timeout, a bound on the whole run, and a failure that names the step
// (on stderr, exit status 1) so the Rust test that ran the script can show where it broke.

/**
 * The helpers of one check. `label` starts the failure line; `context()` adds what the run is
 * about (a transport, say), else the step under way is shown.
 */
export function checks(label, { stepMs, overallMs, context = () => "" }) {
  let current = "setup";

  function fail(step, message) {
    console.error(`${label} FAILED at step "${step}" (${context() || current}): ${message}`);
    process.exit(1);
  }

  /** A setting, or `dflt`; a missing one fails the run. */
  function env(name, dflt) {
    const v = process.env[name] ?? dflt;
    if (!v) fail("setup", `environment variable ${name} is not set`);
    return v;
  }

  /** Runs one step under a timeout; any throw or timeout fails the run with the step's name. */
  async function step(name, fn, ms = stepMs) {
    current = name;
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    });
    try {
      return await Promise.race([fn(), timeout]);
    } catch (e) {
      fail(name, e?.stack ?? String(e));
    } finally {
      clearTimeout(timer);
    }
  }

  setTimeout(() => fail("overall", `the run took longer than ${overallMs / 1000} s`), overallMs).unref();
  return {
    env,
    fail,
    step,
    /** The step under way (or what `during` named inside it). */
    current: () => current,
    /** Names a part of the step under way, for the failure line. */
    during: (what) => {
      current = what;
    },
  };
}
