// Scratch: photograph the Feishu connect flows on the admin page (headless chromium, no downloads).
import { chromium } from "playwright-core";
const [base, token, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
await page.goto(base + "/admin");
await page.getByLabel("Admin token").fill(token);
await page.getByRole("button", { name: "Sign in" }).click();
await page.getByRole("link", { name: "Accounts" }).click();
const card = page.getByRole("article", { name: "Feishu/Lark", exact: true });
// 1. create by scan: the QR of the app-registration flow
await card.getByRole("button", { name: "Connect a Feishu/Lark account" }).click();
await card.getByLabel("Account name (shown here)").fill("Sales bot");
await card.getByRole("button", { name: "Start connecting Feishu/Lark" }).click();
await page.waitForTimeout(3000);
await page.getByText("Waiting for you to scan").first().scrollIntoViewIfNeeded();
await page.screenshot({ path: `${out}/feishu-create.png` });
// 2. link an existing app: the form with the link-only fields, secrets as password fields
await card.getByRole("button", { name: "Connect a Feishu/Lark account" }).click();
await card.getByLabel("Account name (shown here)").fill("Support bot");
await card.getByLabel("Mode", { exact: true }).selectOption("link");
await card.getByLabel("App ID", { exact: true }).fill("cli_a1b2c3d4e5");
await card.getByLabel("App Secret", { exact: true }).fill("shot-secret-000");
await card.getByLabel("Receive events by", { exact: true }).selectOption("webhook");
await card.getByLabel("Encrypt Key", { exact: true }).fill("shot-encrypt-key");
await card.getByLabel("Verification Token", { exact: true }).fill("shot-verify");
await card.scrollIntoViewIfNeeded();
await page.waitForTimeout(500);
await card.screenshot({ path: `${out}/feishu-link.png` });
await browser.close();
