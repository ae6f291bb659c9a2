// The QR step of the admin page for a Weixin login, as a PNG (see weixin-qr.sh, which runs it).
//   NODE_PATH=/tmp/node_modules node weixin-qr.cjs BASE_URL ADMIN_TOKEN OUT.png
// playwright-core drives the system Chromium (/usr/bin/chromium), headless.
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [base, token, out] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1180, height: 860 }, deviceScaleFactor: 1 });
    await page.addInitScript((t) => sessionStorage.setItem("channel-runtime-admin-token", t), token);
    await page.goto(`${base}/admin#accounts`);
    await page.getByRole("button", { name: "Connect a Weixin account" }).click();
    await page.locator("#connect-name-weixin").fill("Shop assistant");
    await page.getByRole("button", { name: "Start connecting Weixin" }).click();
    const qr = page.getByRole("img", { name: /QR code/i }).first();
    await qr.waitFor({ state: "visible", timeout: 15000 });
    await qr.scrollIntoViewIfNeeded();
    await page.waitForTimeout(300);
    await page.screenshot({ path: out, fullPage: false });
  } finally {
    await browser.close();
}
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
