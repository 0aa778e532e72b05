/**
 * Lifecycle (ARCHITECTURE "Lifecycle"): one ordered list of named steps, owned by the composition
 * root. Steps are added as their parts start; {@link Lifecycle.stop} runs their stops in reverse
 * order, each under its own deadline and all under one overall deadline, so a stop that hangs
 * (an engine that never answers) costs its budget and no more.
 */
import { systemClock, systemScheduler, type Clock, type Scheduler, type Timer } from "./clock.ts";
import type { Logger } from "./log.ts";

export interface LifecycleStep {
  name: string;
  /** Undoes what the step started. */
  stop(): Promise<unknown> | unknown;
  /** This step's own budget, ms (within what is left of the whole). Default 2000. */
  timeoutMs?: number;
}

/** How one step's stop went. */
export interface StepReport {
  name: string;
  ms: number;
  outcome: "ok" | "failed" | "timed_out" | "skipped";
}

export class Lifecycle {
  private readonly steps: LifecycleStep[] = [];
  private stopping: Promise<StepReport[]> | null = null;

  /**
   * @param clock times the budgets and the reports (ms)
   * @param scheduler fires the per-step deadlines; a test's ManualClock holds them until it advances
   */
  constructor(
    private readonly log: Logger,
    private readonly clock: Clock = systemClock,
    private readonly scheduler: Scheduler = systemScheduler,
  ) {}

  /** Records a started step; it stops before every step added earlier. */
  add(step: LifecycleStep): void {
    this.steps.push(step);
  }

  /** Names of the steps in start order. */
  names(): string[] {
    return this.steps.map((s) => s.name);
  }

  /**
   * Stops every step in reverse order. A step that throws or overruns its budget is logged and the
   * next one runs; once the overall budget is spent the remaining steps are skipped.
   * @param budgetMs the whole stop's budget, ms
   * @returns one report per step, in the order they ran
   */
  stop(budgetMs: number): Promise<StepReport[]> {
    this.stopping ??= this.run(budgetMs);
    return this.stopping;
  }

  private async run(budgetMs: number): Promise<StepReport[]> {
    const deadline = this.clock.now() + budgetMs;
    const reports: StepReport[] = [];
    const order = [...this.steps].reverse();
    for (const [i, step] of order.entries()) {
      const left = deadline - this.clock.now();
      if (left <= 0) {
        reports.push({ name: step.name, ms: 0, outcome: "skipped" });
        continue;
      }
      // A hang never eats the later steps' share: each keeps up to 200 ms of the budget.
      const reserve = order.slice(i + 1).reduce((sum, s) => sum + Math.min(200, s.timeoutMs ?? 2000), 0);
      const t0 = this.clock.now();
      const budget = Math.max(Math.min(50, left), Math.min(left - reserve, step.timeoutMs ?? 2000));
      let timer: Timer | undefined;
      let outcome: StepReport["outcome"];
      try {
        outcome = await Promise.race([
          Promise.resolve().then(() => step.stop()).then(() => "ok" as const),
          new Promise<"timed_out">((r) => (timer = this.scheduler.after(budget, () => r("timed_out")))),
        ]);
      } catch (err) {
        this.log.warn("lifecycle: stop step failed", { step: step.name, err });
        outcome = "failed";
      } finally {
        timer?.cancel();
      }
      const ms = Math.round(this.clock.now() - t0);
      if (outcome === "timed_out") this.log.warn("lifecycle: stop step overran its budget", { step: step.name, budget_ms: Math.round(budget) });
      reports.push({ name: step.name, ms, outcome });
    }
    return reports;
  }
}
